package com.example.shouter;

import org.springframework.beans.factory.annotation.Value;
import org.springframework.context.annotation.Bean;
import org.springframework.context.annotation.Configuration;
import org.springframework.context.annotation.Profile;
import org.springframework.kafka.config.ConcurrentKafkaListenerContainerFactory;
import org.springframework.kafka.core.ProducerFactory;
import org.springframework.kafka.listener.ConcurrentMessageListenerContainer;
import org.springframework.kafka.requestreply.ReplyingKafkaTemplate;
import org.springframework.kafka.support.TopicPartitionOffset;

/**
 * A {@code ReplyingKafkaTemplate} with a reply topic of its own, as in Spring
 * for Apache Kafka's reference guide. {@code echo.reply-partition} has it read
 * that one partition of the reply topic (the template then asks for it with
 * {@code kafka_replyPartition}); {@code echo.binary-correlation=false} has it
 * send its correlation ids as strings instead of 16 raw bytes.
 */
@Configuration(proxyBeanMethods = false)
@Profile("client")
class EchoClientConfig {

    @Bean
    ConcurrentMessageListenerContainer<String, String> echoReplies(
            ConcurrentKafkaListenerContainerFactory<String, String> factory,
            @Value("${echo.reply-topic}") String replyTopic,
            @Value("${echo.reply-partition:#{null}}") Integer replyPartition) {
        ConcurrentMessageListenerContainer<String, String> container = replyPartition == null
                ? factory.createContainer(replyTopic)
                : factory.createContainer(new TopicPartitionOffset(replyTopic, replyPartition));
        container.setAutoStartup(false);
        return container;
    }

    @Bean
    ReplyingKafkaTemplate<String, String, String> echoTemplate(
            ProducerFactory<String, String> producerFactory,
            ConcurrentMessageListenerContainer<String, String> echoReplies,
            @Value("${echo.binary-correlation:true}") boolean binaryCorrelation) {
        ReplyingKafkaTemplate<String, String, String> template =
                new ReplyingKafkaTemplate<>(producerFactory, echoReplies);
        template.setBinaryCorrelation(binaryCorrelation);
        return template;
    }
}
